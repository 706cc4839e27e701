"""Faust agents and the transfer flow they drive: message -> task -> transfer -> result."""
