"""The prompt encoder and mask decoder as ONNX, with the official interface (``python -m sam_engine.onnx_export``).

- ``decoder``: :class:`OnnxDecoder`, the traced module, and :func:`export_decoder`, which writes ``decoder.onnx``.
"""

from sam_engine.onnx_export.decoder import ONNX_INPUTS, ONNX_OUTPUTS, OnnxDecoder, export_decoder

__all__ = ["ONNX_INPUTS", "ONNX_OUTPUTS", "OnnxDecoder", "export_decoder"]
