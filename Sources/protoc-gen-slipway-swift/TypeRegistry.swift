/// Every message and enum of the request (all files, dependencies included), by fully qualified name.
struct TypeRegistry {
    /// The Swift type name of each message and enum.
    private(set) var swiftNames: [String: String] = [:]
    /// Every message, map entries included.
    private(set) var messages: [String: MessageInfo] = [:]
    /// The names of enum types.
    private(set) var enumNames: Set<String> = []

    init(files: [FileInfo]) {
        for file in files {
            let prefix = Naming.packagePrefix(file.package)
            for message in file.messages { add(message, swiftName: prefix + message.name) }
            for enumType in file.enums { add(enumType, swiftName: prefix + enumType.name) }
        }
    }

    private mutating func add(_ message: MessageInfo, swiftName: String) {
        swiftNames[message.fullName] = swiftName
        messages[message.fullName] = message
        for nested in message.messages { add(nested, swiftName: swiftName + "." + nested.name) }
        for nested in message.enums { add(nested, swiftName: swiftName + "." + nested.name) }
    }

    private mutating func add(_ enumType: EnumInfo, swiftName: String) {
        swiftNames[enumType.fullName] = swiftName
        enumNames.insert(enumType.fullName)
    }

    /// The Swift name of a message or enum; fails loudly for a name protoc did not describe.
    func swiftName(_ fullName: String) throws(GeneratorError) -> String {
        guard let name = swiftNames[fullName] else { throw GeneratorError("unknown type \(fullName)") }
        return name
    }

    /// The map entry message of a field, when the field is a map.
    func mapEntry(_ field: FieldInfo) -> MessageInfo? {
        guard field.isRepeated, field.kind == .message, let entry = messages[field.typeName], entry.isMapEntry else { return nil }
        return entry
    }
}

/// A problem that stops generation; reported to protoc as the response's `error`.
struct GeneratorError: Error {
    var message: String
    init(_ message: String) { self.message = message }
}

/// Accumulates indented Swift source.
struct CodeWriter {
    private(set) var text = ""
    private var indentation = ""

    /// Appends one line (or an empty line) at the current indentation.
    mutating func line(_ line: String = "") {
        text += line.isEmpty ? "\n" : indentation + line + "\n"
    }

    /// Appends `opening`, the body one level deeper (same level for a `switch`), then `closing`.
    mutating func block(_ opening: String, closing: String = "}", _ body: (inout CodeWriter) throws(GeneratorError) -> Void) throws(GeneratorError) {
        line(opening)
        let indent = opening.hasPrefix("switch ") ? "" : "    "
        indentation += indent
        try body(&self)
        indentation.removeLast(indent.count)
        line(closing)
    }
}
