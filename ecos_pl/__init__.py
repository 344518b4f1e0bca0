"""ecos-pl: Efficient Collaborative Open-Source Sampling (Hong et al., NeurIPS 2022) on PyTorch Lightning.

`ecos_pl.protocol` is the framework-free core (compress, score, select, messages,
privacy); everything that imports Lightning lives in `ecos_pl.scenarios`,
`datamodules/` and `callbacks/`.
"""

__version__ = "0.1.0"
