"""RoDPO: robust DPO for multimodal sequential recommendation, as Kedro pipelines."""

__version__ = "0.1.0"
