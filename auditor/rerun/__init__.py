"""rerun"""
