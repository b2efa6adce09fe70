"""The bottom layer: errors, events, options, paths, config, safe file writing, names,
keep_alive, text cleaning, image input. Imports nothing of chatcli outside ``core``.
"""
