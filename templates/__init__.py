"""Project templates for `mosaicsync init`, shipped in the package as `mosaicsync.templates`.

Each folder is one template: its files are copied as they are, except `template.toml`, which
describes it. mosaic.toml is not stored here: init renders it for the new project.
"""
