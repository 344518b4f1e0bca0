from datamodules.ecos_datamodule import ECOSDataModule, ImageArrayDataset

__all__ = ["ECOSDataModule", "ImageArrayDataset"]
