"""The job config and its vocabulary: the typed settings that flags and recipes resolve into, the
built-in tasks, spoken languages and the engine options, shared by every stage.
"""
