"""Adapters that put the engine into other tools (Data-Juicer, Ray); each imports its tool lazily."""
