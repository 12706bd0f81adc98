"""affectus.experiments"""
