"""cosigner.daemon"""
