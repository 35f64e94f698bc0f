"""cosigner.signing"""
