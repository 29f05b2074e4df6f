"""Model families: the registry's entries (geomoe.core.registry). Each family's package holds its spec sections,
its training step and evaluation, and its driver; geomoe.families.base says what a family provides."""
