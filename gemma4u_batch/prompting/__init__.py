"""Request building: a decoded item becomes one unit of engine requests per task: the instruction,
the chat prompt, the content key, the structured-output constraint and the media parts.
"""
