import BlockCore
import LogOptionsClock

/// Opens `vmdk` nodes: a monolithic sparse file (header and embedded descriptor) or a descriptor
/// file whose extents are opened as their own file nodes, then the backing file.
public enum VmdkOpener {
    /// Opens a vmdk node.
    public static let opener: DriverOpener = { options, context throws(OptionError) in
        guard let file = try context.child("file", of: options) else {
            throw options.missing("file")
        }
        return try context.graph.openingImage(Qcow2Opener.fileIdentity(file)) { () throws(OptionError) in
            try open(options, context: context, file: file)
        }
    }

    /// Create types a descriptor file may name (QEMU's list).
    static let descriptorTypes: Set<String> = [
        "monolithicFlat", "vmfs", "vmfsSparse", "seSparse", "twoGbMaxExtentSparse", "twoGbMaxExtentFlat",
    ]

    private static func open(_ options: OptionReader, context: OpenContext, file: BlockNode) throws(OptionError) -> OpenedDriver {
        let readOnly = context.common.readOnly
        try context.requireWritable([file], of: options)
        func fail(_ message: String) -> OptionError { options.failure(message) }
        let name = file.driver.filename
        var extents: [VmdkExtent] = []
        var children: [(role: String, node: BlockNode)] = [("file", file)]
        let descriptor: VmdkDescriptor
        let descriptorOffset: UInt64
        let descriptorArea: Int
        let createType: String
        do throws(BlockError) {
            guard file.length >= 4 else { throw .invalid("File is too small, not a valid image") }
            let start = try readBytes(file, at: 0, count: Int(min(file.length, UInt64(VmdkDescriptor.maxLength))))
            let magic = Array(start[0..<4])
            if magic == VmdkSparseHeader.magic || magic == VmdkSparseHeader.cowdMagic {
                let (extent, header) = try sparseExtent(file, start: 0, typeName: "", writable: !readOnly)
                extents.append(extent)
                guard header.descriptorOffset > 0, header.descriptorSize > 0 else {
                    throw .invalid("vmdk: the sparse file has no embedded descriptor")
                }
                descriptorOffset = header.descriptorOffset * 512
                descriptorArea = Int(min(header.descriptorSize * 512, UInt64(VmdkDescriptor.maxLength)))
                descriptor = try VmdkDescriptor.parse(try readBytes(
                    file, at: descriptorOffset, count: Int(min(UInt64(descriptorArea), file.length - min(file.length, descriptorOffset)))))
                createType = extent.compressed ? "streamOptimized" : "monolithicSparse"
            } else {
                descriptor = try VmdkDescriptor.parse(start)
                guard !descriptor.createType.isEmpty else { throw .invalid("invalid VMDK image descriptor") }
                guard descriptorTypes.contains(descriptor.createType) else {
                    throw .notSupported("Unsupported image type '\(descriptor.createType)'")
                }
                descriptorOffset = 0
                descriptorArea = start.count
                createType = descriptor.createType
                let directory = PathName.directory(of: name)
                var position: UInt64 = 0
                for (index, line) in descriptor.extents.enumerated() {
                    let extent = try openExtent(line, index: index, at: position, directory: directory, context: context, options: options,
                                                readOnly: readOnly)
                    if let node = extent.file { children.append(("extents.\(index)", node)) }
                    guard extent.length <= UInt64(Int64.max) - position else { throw .invalid("vmdk: the extents are too large") }
                    extents.append(extent)
                    position += extent.length
                }
            }
            guard !extents.isEmpty else { throw .invalid("invalid VMDK image descriptor: no extents") }
        } catch {
            throw fail("'\(name)': \(error.message)")
        }
        let backing = try ImageBacking.open(
            options, context: context, storedName: descriptor.parentFileNameHint, storedFormat: "vmdk", file: file)
        var parentMatches = false
        if let backing, let parent = backing.driver as? VmdkDriver {
            parentMatches = parent.currentCID == descriptor.parentCID
        }
        if let backing { children.append(("backing", backing)) }
        let driver = VmdkDriver(
            file: file, extents: extents, descriptor: descriptor, descriptorOffset: descriptorOffset, descriptorArea: descriptorArea,
            createType: createType, backing: backing, parentMatches: parentMatches, readOnly: readOnly)
        return OpenedDriver(driver: driver, children: children)
    }

    /// Opens the file of one descriptor extent line (relative names against the descriptor's directory).
    private static func openExtent(
        _ line: VmdkExtentLine, index: Int, at position: UInt64, directory: String, context: OpenContext, options: OptionReader,
        readOnly: Bool
    ) throws(BlockError) -> VmdkExtent {
        guard line.sectors <= UInt64(Int64.max) / 512, position <= UInt64(Int64.max) - line.sectors * 512 else {
            throw .invalid("vmdk: extent \(index) is too large")
        }
        let length = line.sectors * 512
        guard let fileName = line.fileName else {
            return VmdkExtent(kind: .zero, file: nil, start: position, length: length, typeName: line.type)
        }
        if line.type == "SESPARSE" { throw .notSupported("Unsupported extent type 'SESPARSE'") }
        let path = fileName.hasPrefix("/") || directory.isEmpty ? fileName : directory + "/" + fileName
        let definition: OptionValue = .object([
            "driver": .string("file"), "filename": .string(path), "read-only": .bool(readOnly),
        ])
        let node: BlockNode
        do {
            node = try context.graph.open(definition, context: "\(options.context) → extents.\(index)", inheritReadOnly: readOnly)
        } catch {
            throw .invalid("Could not open extent '\(path)': \(error.message)")
        }
        guard line.offset <= UInt64(Int64.max) / 512 else { throw .invalid("vmdk: extent \(index) has an invalid offset") }
        switch line.type {
        case "FLAT", "VMFS":
            return VmdkExtent(kind: .flat(offset: line.offset * 512), file: node, start: position, length: length, typeName: line.type)
        default:
            guard node.length >= 4 else { throw .invalid("File is too small, not a valid image") }
            return try sparseExtent(node, start: position, typeName: line.type, writable: !readOnly).extent
        }
    }

    /// Reads a sparse extent's header (the footer's copy for a stream with its directory at the end)
    /// and its grain directories.
    static func sparseExtent(
        _ file: BlockNode, start: UInt64, typeName: String, writable: Bool
    ) throws(BlockError) -> (extent: VmdkExtent, header: VmdkSparseHeader) {
        let first = try readBytes(file, at: 0, count: Int(min(file.length, 512)))
        if Array(first[0..<4]) == VmdkSparseHeader.cowdMagic {
            throw .notSupported("vmdk: VMFS sparse (COWD) extents are not supported")
        }
        var header = try VmdkSparseHeader.parse(first)
        if header.gdOffset == VmdkSparseHeader.gdAtEnd {
            guard file.length >= 1536 + 512 else { throw .invalid("Invalid footer") }
            let footer = try readBytes(file, at: file.length / 512 * 512 - 1536, count: 1536)
            let valid = footer.withUnsafeBytes { raw in
                VmdkBytes.u32(raw, 8) == 0 && VmdkBytes.u32(raw, 12) == 3 && Array(raw[512..<516]) == VmdkSparseHeader.magic
                    && VmdkBytes.u64(raw, 1024) == 0 && VmdkBytes.u32(raw, 1032) == 0 && VmdkBytes.u32(raw, 1036) == 0
            }
            guard valid else { throw .invalid("Invalid footer") }
            header = try VmdkSparseHeader.parse(Array(footer[512..<1024]))
        }
        try header.validate(fileLength: file.length, writable: writable)
        let entries = Int(header.directoryEntries)
        func directory(at sector: UInt64) throws(BlockError) -> [UInt32] {
            let bytes = try readBytes(file, at: sector * 512, count: entries * 4)
            return bytes.withUnsafeBytes { raw in (0..<entries).map { VmdkBytes.u32(raw, $0 * 4) } }
        }
        let gd = try directory(at: header.gdOffset)
        let rgd = header.flags & VmdkSparseHeader.flagRedundantGD != 0 ? try directory(at: header.rgdOffset) : nil
        // The header's capacity, not the descriptor line's size, is the extent's size (as QEMU takes it).
        let length = header.capacity * 512
        let extent = VmdkExtent(kind: .sparse, file: file, start: start, length: length, typeName: typeName,
                                header: header, directory: gd, redundant: rgd)
        return (extent, header)
    }


    static func readBytes(_ file: BlockNode, at offset: UInt64, count: Int) throws(BlockError) -> [UInt8] {
        guard offset <= file.length, UInt64(count) <= file.length - offset else {
            throw .invalid("a table at \(offset)+\(count) lies past the end of the file (\(file.length) bytes)")
        }
        var bytes = [UInt8](repeating: 0, count: count)
        if count > 0 { try bytes.withMutableBytes { (raw) throws(BlockError) in try file.read(into: raw, at: offset) } }
        return bytes
    }
}
