"""cosigner.sandbox"""
