"""cosigner.api"""
