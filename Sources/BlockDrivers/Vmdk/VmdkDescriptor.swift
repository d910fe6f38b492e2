import BlockCore

/// One extent line of a VMDK descriptor: `RW 2048 FLAT "name-flat.vmdk" 0`.
public struct VmdkExtentLine: Sendable, Equatable {
    /// The extent's kind as the descriptor spells it (`FLAT`, `SPARSE`, `VMFS`, `VMFSSPARSE`, `ZERO`, ...).
    public var type: String
    /// Its size in 512-byte sectors.
    public var sectors: UInt64
    /// The file holding it (nil for `ZERO`).
    public var fileName: String?
    /// For flat extents: where the data starts in the file, in sectors.
    public var offset: UInt64

    /// Describes an extent line.
    public init(type: String, sectors: UInt64, fileName: String?, offset: UInt64 = 0) {
        self.type = type
        self.sectors = sectors
        self.fileName = fileName
        self.offset = offset
    }
}

/// The text descriptor of a VMDK image (VMware Virtual Disk Format 1.1, section "The Descriptor File"):
/// the content identifiers, the create type, the parent hint and the extents.
public struct VmdkDescriptor: Sendable, Equatable {
    /// `CID`: changes whenever the disk's content changes.
    public var cid: UInt32
    /// `parentCID`: the parent's CID when this link was made (`ffffffff`: no parent).
    public var parentCID: UInt32
    /// `createType`, such as `monolithicSparse` (empty when the text has none).
    public var createType: String
    /// `parentFileNameHint`: the parent image, relative to this one's directory.
    public var parentFileNameHint: String?
    /// The extents that are read and written (access `RW`), in order.
    public var extents: [VmdkExtentLine]

    /// Describes a descriptor.
    public init(cid: UInt32, parentCID: UInt32, createType: String, parentFileNameHint: String?, extents: [VmdkExtentLine]) {
        self.cid = cid
        self.parentCID = parentCID
        self.createType = createType
        self.parentFileNameHint = parentFileNameHint
        self.extents = extents
    }

    /// Most bytes of descriptor text read (QEMU's bound).
    public static let maxLength = (1 << 20) - 1

    /// Parses descriptor text; the text ends at the first NUL byte.
    /// - Throws: `EINVAL` with QEMU's wording when a required key or an extent line is invalid.
    public static func parse(_ bytes: [UInt8]) throws(BlockError) -> VmdkDescriptor {
        let end = bytes.firstIndex(of: 0) ?? bytes.count
        var values: [String: String] = [:]
        var extents: [VmdkExtentLine] = []
        // Lines are split on bytes: as characters, "\r\n" would be one.
        for rawLine in bytes[0..<min(end, maxLength)].split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: true) {
            let lineBytes = rawLine.last == UInt8(ascii: "\r") ? rawLine.dropLast() : rawLine
            let line = Substring(String(decoding: lineBytes, as: UTF8.self))
            let trimmed = line.drop { $0 == " " || $0 == "\t" }
            if trimmed.isEmpty || trimmed.first == "#" { continue }
            if let extent = try extentLine(trimmed) {
                extents.append(extent)
                continue
            }
            guard let equals = trimmed.firstIndex(of: "=") else { continue }
            let key = trimmed[..<equals].trimmingSpaces
            var value = trimmed[trimmed.index(after: equals)...].trimmingSpaces
            if value.count >= 2, value.first == "\"", value.last == "\"" { value = String(value.dropFirst().dropLast()) }
            if values[key] == nil { values[key] = value }
        }
        // A descriptor embedded in a sparse file may leave the create type out; a descriptor file may not.
        let createType = values["createType"] ?? ""
        guard let cid = values["CID"].flatMap(hexValue) else { throw .invalid("invalid VMDK image descriptor: no valid CID") }
        guard let parentCID = values["parentCID"].flatMap(hexValue) else {
            throw .invalid("invalid VMDK image descriptor: no valid parentCID")
        }
        let hint = values["parentFileNameHint"].flatMap { $0.isEmpty ? nil : $0 }
        return VmdkDescriptor(cid: cid, parentCID: parentCID, createType: createType, parentFileNameHint: hint, extents: extents)
    }

    /// `%x` as sscanf reads it: leading hex digits (an optional `0x`), at most 32 bits kept.
    static func hexValue(_ text: String) -> UInt32? {
        var digits = Substring(text)
        if digits.hasPrefix("0x") || digits.hasPrefix("0X") { digits = digits.dropFirst(2) }
        let hex = digits.prefix { $0.isHexDigit }
        guard !hex.isEmpty else { return nil }
        var value: UInt64 = 0
        for digit in hex { value = (value << 4 | UInt64(digit.hexDigitValue!)) & 0xffff_ffff }
        return UInt32(value)
    }

    /// An extent line (`ACCESS SECTORS TYPE ["FILE" [OFFSET]]`), nil for lines of other kinds and for
    /// extents QEMU leaves out (access other than `RW`, no sectors).
    static func extentLine(_ line: Substring) throws(BlockError) -> VmdkExtentLine? {
        let access = line.prefix { $0 != " " && $0 != "\t" }
        guard access == "RW" else { return nil }
        var rest = line.dropFirst(access.count).trimmingLeadingSpaces
        let sizeText = rest.prefix { $0 != " " && $0 != "\t" }
        guard let sectors = Int64(sizeText) else { return nil }
        rest = rest.dropFirst(sizeText.count).trimmingLeadingSpaces
        let type = String(rest.prefix { $0 != " " && $0 != "\t" })
        guard !type.isEmpty, type.count <= 10 else { return nil }
        rest = rest.dropFirst(type.count).trimmingLeadingSpaces
        var fileName: String?
        if rest.first == "\"" {
            let body = rest.dropFirst()
            guard let close = body.firstIndex(of: "\"") else { throw .invalid("Invalid extent line: \(line)") }
            fileName = String(body[..<close])
            rest = body[body.index(after: close)...].trimmingLeadingSpaces
        }
        var offset: Int64?
        if !rest.isEmpty {
            guard let value = Int64(rest.prefix { $0 != " " && $0 != "\t" }) else { throw .invalid("Invalid extent line: \(line)") }
            offset = value
        }
        guard sectors > 0 else { return nil }
        switch type {
        case "ZERO":
            guard fileName == nil, offset == nil else { throw .invalid("Invalid extent line: \(line)") }
            return VmdkExtentLine(type: type, sectors: UInt64(sectors), fileName: nil)
        case "FLAT":
            guard let fileName, let offset, offset >= 0 else { throw .invalid("Invalid extent line: \(line)") }
            return VmdkExtentLine(type: type, sectors: UInt64(sectors), fileName: fileName, offset: UInt64(offset))
        case "VMFS", "SPARSE", "VMFSSPARSE", "SESPARSE":
            guard let fileName, offset == nil else { throw .invalid("Invalid extent line: \(line)") }
            return VmdkExtentLine(type: type, sectors: UInt64(sectors), fileName: fileName)
        default:
            // Types QEMU does not know are left out, as it leaves them out.
            return nil
        }
    }

    /// The descriptor text QEMU writes for a new image (its order, blank lines and DDB keys).
    public func rendered(hardwareVersion: String, adapterType: String, toolsVersion: String, size: UInt64) -> String {
        let heads: UInt64 = adapterType == "ide" ? 16 : 255
        var text = "# Disk DescriptorFile\nversion=1\n"
        text += "CID=\(String(cid, radix: 16))\nparentCID=\(String(parentCID, radix: 16))\n"
        text += "createType=\"\(createType)\"\n"
        if let hint = parentFileNameHint { text += "parentFileNameHint=\"\(hint)\"" }
        text += "\n# Extent description\n"
        for extent in extents {
            text += "RW \(extent.sectors) \(extent.type)"
            if let name = extent.fileName { text += " \"\(name)\"" }
            if extent.type == "FLAT" { text += " \(extent.offset)" }
            text += "\n"
        }
        text += "\n# The Disk Data Base\n#DDB\n\n"
        text += "ddb.virtualHWVersion = \"\(hardwareVersion)\"\n"
        text += "ddb.geometry.cylinders = \"\(size / (63 * heads * 512))\"\n"
        text += "ddb.geometry.heads = \"\(heads)\"\n"
        text += "ddb.geometry.sectors = \"63\"\n"
        text += "ddb.adapterType = \"\(adapterType)\"\n"
        text += "ddb.toolsVersion = \"\(toolsVersion)\"\n"
        return text
    }

    /// `text` with the value of its `CID=` line replaced by `cid` (everything else kept), or nil
    /// when it has no such line.
    public static func replacingCID(in text: [UInt8], with cid: UInt32) -> [UInt8]? {
        let end = text.firstIndex(of: 0) ?? text.count
        var lineStart = 0
        while lineStart < end {
            let lineEnd = text[lineStart..<end].firstIndex(of: UInt8(ascii: "\n")) ?? end
            var start = lineStart
            while start < lineEnd, text[start] == UInt8(ascii: " ") { start += 1 }
            let key = Array("CID=".utf8)
            if lineEnd - start >= key.count, Array(text[start..<start + key.count]) == key {
                var valueEnd = start + key.count
                while valueEnd < lineEnd, text[valueEnd] != UInt8(ascii: "\r") { valueEnd += 1 }
                return Array(text[0..<start + key.count]) + Array(String(cid, radix: 16).utf8) + Array(text[valueEnd..<end])
            }
            lineStart = lineEnd + 1
        }
        return nil
    }
}

extension Substring {
    fileprivate var trimmingLeadingSpaces: Substring { drop { $0 == " " || $0 == "\t" } }
    fileprivate var trimmingSpaces: String {
        var result = trimmingLeadingSpaces
        while let last = result.last, last == " " || last == "\t" { result = result.dropLast() }
        return String(result)
    }
}
