"""Loaders for the official POPE, MME and MMStar file layouts."""
