"""Text and caption generation behind one interface (core; the Ray Data pipelines drive the engines).

An engine turns chat requests (lists of {"role", "content"} messages, optionally with an image) into texts, or
None for a request that failed after its retries. ``rules`` needs no model; ``transformers`` generates locally;
``http`` (an OpenAI-compatible server) and ``vllm`` run through ``ray.data.llm`` processors in the Ray layer.
"""
