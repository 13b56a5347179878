"""The prediction service (``drywall serve``): the champion of the model registry behind HTTP.

- :mod:`~drywall_core.serve.keys`: API keys stored hashed, checked in constant time; per-key rate limits;
- :mod:`~drywall_core.serve.follow`: the model serving now and the next one loaded beside it --
  downloaded with checksums, warmed on its recorded warm-up set, swapped in or refused;
- :mod:`~drywall_core.serve.batching`: concurrent requests coalesced into one forward pass;
- :mod:`~drywall_core.serve.answers`: an uploaded photo read (or refused with a named 4xx) and a
  probability map turned into the answer (RLE, PNG or polygons, and how sure the model was);
- :mod:`~drywall_core.serve.app`: the FastAPI application, its limits, metrics and the page;
- :mod:`~drywall_core.serve.client`: ``drywall predict --server``.
"""
