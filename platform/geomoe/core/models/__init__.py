"""Models (core, no Ray): encoders with a frozen shared trunk and per-expert tails, PE-MoE, SMGeo."""
