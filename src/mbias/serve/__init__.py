"""HTTP service: a debias API and an OpenAI-compatible guard proxy in front of any LLM."""
