import JSON

extension QAPIIntrospection {
    /// The SchemaInfo objects of `schema`, parsed once: the result of `query-qmp-schema`.
    public static let entries: [JSONValue] = {
        do {
            if case .array(let items) = try JSONValue.parse(schema) { return items }
        } catch {
            preconditionFailure("generated introspection text is not valid JSON: \(error)")
        }
        preconditionFailure("generated introspection text is not a JSON array")
    }()
}
