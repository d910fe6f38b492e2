/// The documentation of one argument of a command, or one data member of an event.
public struct ArgumentDoc: Sendable, Equatable {
    /// The member name, as on the wire.
    public let name: String
    /// The QAPI type name, such as "str", "int", "BlockdevOnError" or "[BlockDirtyInfo]".
    public let type: String
    /// Whether the member may be left out.
    public let optional: Bool
    /// What the member means.
    public let doc: String

    public init(name: String, type: String, optional: Bool, doc: String) {
        self.name = name
        self.type = type
        self.optional = optional
        self.doc = doc
    }
}

/// The documentation of one command, taken from the schema.
public struct CommandDoc: Sendable, Equatable {
    /// The command name.
    public let name: String
    /// The first paragraph of the description.
    public let summary: String
    /// The whole documentation as plain text: description, arguments, returns, errors, examples.
    public let text: String
    /// The arguments, in schema order.  For commands whose arguments are a
    /// union (see `acceptsOtherArguments`), the members common to all variants.
    public let arguments: [ArgumentDoc]
    /// The named type the arguments are, when the schema gives one (for
    /// example "DriveBackup" or "BlockdevOptions"); nil for inline arguments.
    public let argumentsType: String?
    /// True when arguments other than `arguments` may be valid (union or
    /// free-form arguments), so a client must not reject unknown names.
    public let acceptsOtherArguments: Bool
    /// The result type, such as "[BlockInfo]"; nil when the command returns `{}`.
    public let returns: String?
    /// What the result means ("" when not documented).
    public let returnsDoc: String

    public init(
        name: String, summary: String, text: String, arguments: [ArgumentDoc], argumentsType: String?,
        acceptsOtherArguments: Bool, returns: String?, returnsDoc: String
    ) {
        self.name = name
        self.summary = summary
        self.text = text
        self.arguments = arguments
        self.argumentsType = argumentsType
        self.acceptsOtherArguments = acceptsOtherArguments
        self.returns = returns
        self.returnsDoc = returnsDoc
    }

    /// The argument named `name`, if the command has one.
    public func argument(_ name: String) -> ArgumentDoc? {
        arguments.first { $0.name == name }
    }
}

/// The documentation of one event, taken from the schema.
public struct EventDoc: Sendable, Equatable {
    /// The event name.
    public let name: String
    /// The first paragraph of the description.
    public let summary: String
    /// The whole documentation as plain text.
    public let text: String
    /// The members of the event's data, in schema order.
    public let members: [ArgumentDoc]

    public init(name: String, summary: String, text: String, members: [ArgumentDoc]) {
        self.name = name
        self.summary = summary
        self.text = text
        self.members = members
    }
}
