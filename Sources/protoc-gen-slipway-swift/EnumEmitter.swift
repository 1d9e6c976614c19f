/// Emits a Swift enum with an `unrecognized(Int32)` case for each protobuf enum.
struct EnumEmitter {
    let registry: TypeRegistry

    func emit(_ enumType: EnumInfo, into out: inout CodeWriter) throws(GeneratorError) {
        let swiftName = try registry.swiftName(enumType.fullName)
        let localName = String(swiftName.split(separator: ".").last!)
        let caseNames = Naming.enumCases(enumName: enumType.name, values: enumType.values.map(\.name))
        // With `allow_alias`, the first name of a number is the case and later ones are aliases.
        var primary: [Int32: String] = [:]
        var cases: [(name: String, number: Int32, protoName: String)] = []
        var aliases: [(name: String, target: String)] = []
        for (index, value) in enumType.values.enumerated() {
            if let target = primary[value.number] {
                aliases.append((caseNames[index], target))
            } else {
                primary[value.number] = caseNames[index]
                cases.append((caseNames[index], value.number, value.name))
            }
        }
        guard let first = cases.first else { throw GeneratorError("enum \(enumType.fullName) has no values") }
        out.line("/// The enum `\(enumType.fullName)`.")
        try out.block("public enum \(localName): ProtoEnum {") { (out: inout CodeWriter) throws(GeneratorError) in
            for value in cases { out.line("case \(value.name) // = \(value.number)") }
            out.line("/// A value this version of the .proto file does not know.")
            out.line("case unrecognized(Int32)")
            for alias in aliases { out.line("public static let \(alias.name): Self = .\(alias.target)") }
            out.line()
            out.line("public init() { self = .\(first.name) }")
            out.line()
            try out.block("public init(rawValue: Int32) {") { (out: inout CodeWriter) throws(GeneratorError) in
                try out.block("switch rawValue {") { (out: inout CodeWriter) throws(GeneratorError) in
                    for value in cases { out.line("case \(value.number): self = .\(value.name)") }
                    out.line("default: self = .unrecognized(rawValue)")
                }
            }
            out.line()
            try out.block("public var rawValue: Int32 {") { (out: inout CodeWriter) throws(GeneratorError) in
                try out.block("switch self {") { (out: inout CodeWriter) throws(GeneratorError) in
                    for value in cases { out.line("case .\(value.name): \(value.number)") }
                    out.line("case .unrecognized(let value): value")
                }
            }
            out.line()
            out.line("/// The value's name as the .proto file spells it (the number for an unrecognized value).")
            try out.block("public var protoName: String {") { (out: inout CodeWriter) throws(GeneratorError) in
                try out.block("switch self {") { (out: inout CodeWriter) throws(GeneratorError) in
                    for value in cases { out.line("case .\(value.name): \"\(value.protoName)\"") }
                    out.line("case .unrecognized(let value): String(value)")
                }
            }
        }
    }
}
