"""blockd's QAPI generator: QAPI schema in, Swift code and the QMP reference out.

The stages, one module each:

  parser       schema files -> expressions, each with its '##' documentation
               block (doc.py splits those blocks into sections);
  definitions  expressions -> definitions, checking each expression's shape;
  checker      semantic checks across definitions: references, bases, unions,
               alternates, documentation, Swift name clashes; yields the model;
  model        the resolved schema: types, commands, events, members;
  renderers    swift_types, swift_commands, swift_arguments, swift_events,
               swift_introspection, swift_documentation (Sources/QAPI/Generated)
               and markdown (docs/qmp.md).

main.py ties them together for scripts/qapi-gen.

The schema language is QEMU's QAPI: 'enum', 'struct', 'union' (simple, or
flat with 'base' and 'discriminator'), 'alternate', 'command' (with 'data',
'returns', 'boxed') and 'event'.  One blockd extension: a command may say
'data': 'any' to receive its arguments object undecoded.  Unions and
alternates become `public typealias X = JSONValue` in Swift: the block layer
decodes them itself.
"""
