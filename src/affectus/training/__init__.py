"""affectus.training"""
