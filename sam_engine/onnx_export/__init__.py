"""The prompt encoder and mask decoder as ONNX, with the official interface (``python -m sam_engine.onnx_export``).

- ``decoder``: :class:`OnnxDecoder`, the traced module, and :func:`export_decoder`, which writes ``decoder.onnx``.

Nothing is imported here, so that the command answers ``--help`` without torch.
"""
