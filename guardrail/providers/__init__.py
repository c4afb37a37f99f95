"""Provider adapters and guarded SDK clients: one subpackage per provider.

Owns: reading and rewriting a provider's requests and responses for the engine (its
``ProviderAdapter``), and the guarded client that hands the SDK's calls to the engine.
May import: engine, catalog, counting, prompt, errors, policy, tenancy. The SDKs themselves
are imported lazily, where a guarded client touches them.
"""
