"""The interactive front end: the loop, the slash-command registry and its commands, the
answer display (Ctrl+C, typeahead) and the renderer.
"""
