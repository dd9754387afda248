"""Contracts shared by every part of Pulserank: events, time, the gRPC API, key layout.

Imports nothing else of ours, so every other package may depend on it.
"""
