"""Adapters that make real compilers compile through xcache."""
