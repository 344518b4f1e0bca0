from datamodules.ecos_datamodule import ECOSDataModule, ImageArrayDataset  # noqa: F401 - ImageArrayDataset lives in ecos_pl.data.loaders

__all__ = ["ECOSDataModule", "ImageArrayDataset"]
