"""Exact prompt-token counting: text, chat messages, tools, images, audio.

Owns: the OpenAI cookbook's rules and the providers' published image rules, the per-
encoding string caches, and the Claude estimate.
May import: catalog (a model's encoding and constants), errors.
"""
