"""The embedded default dataset: procedural scenes with exact, nested masks, written as shards.

- ``shapes``: filled 2-D shapes and textures; ``scenes``: scenes of objects with parts and sub-parts,
  drawn back to front; ``dataset``: scenes into shards, resumable.
- ``python -m sam_engine.data.synthetic`` (``sam-synthetic``): the command.
"""
