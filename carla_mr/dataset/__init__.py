"""Cameras, labeled dataset recording and perception-in-the-loop evaluation."""
