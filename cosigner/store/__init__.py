"""cosigner.store"""
