"""Teachers: LLMs that write a synthetic training corpus on a topic (`magnet-agent generate-data`).

models: the teacher models (an OpenAI-compatible endpoint, or the bundled SmolLM2);
corpus: writing the corpus within a byte and time budget, resumably; quality: which documents it
keeps. Layer: the teacher uses the planners' model loading and endpoint errors, never the tools,
the loop or the CLI.
"""
