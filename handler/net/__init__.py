"""Outbound calls: SSRF-safe URL checks and fetches, connections to vetted addresses, the deadline
watchdog, gs:// inputs, and Standard Webhooks signing and delivery.
"""
