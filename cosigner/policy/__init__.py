"""cosigner.policy"""
