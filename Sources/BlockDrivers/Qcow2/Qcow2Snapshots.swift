import BlockCore

/// One internal snapshot as the snapshot table describes it.
public struct Qcow2Snapshot: Sendable, Equatable {
    /// Unique id string.
    public var id: String
    /// Name.
    public var name: String
    /// Offset of its L1 table in the file.
    public var l1TableOffset: UInt64
    /// Entries of its L1 table.
    public var l1Size: UInt32
    /// Creation time: seconds and nanoseconds since the Epoch.
    public var dateSeconds: UInt32
    public var dateNanoseconds: UInt32
    /// Guest run time at the snapshot, in nanoseconds.
    public var vmClockNanoseconds: UInt64
    /// Bytes of saved VM state.
    public var vmStateSize: UInt64
    /// Disk size when the snapshot was taken, when recorded.
    public var diskSize: UInt64?
    /// Instruction count, when recorded.
    public var icount: UInt64?
}

/// Reading the snapshot table.
public enum Qcow2Snapshots {
    /// The snapshots listed in an image's snapshot table.
    public static func list(file: BlockNode, header: Qcow2Header) throws(BlockError) -> [Qcow2Snapshot] {
        guard header.snapshotCount > 0 else { return [] }
        guard header.snapshotCount <= 65536 else { throw .invalid("qcow2: snapshot count \(header.snapshotCount) is out of range") }
        var snapshots: [Qcow2Snapshot] = []
        var position = header.snapshotsOffset
        for index in 0..<Int(header.snapshotCount) {
            let fixed = try Qcow2Opener.readBytes(file, at: position, count: 40)
            let (l1Offset, l1Size, idLength, nameLength, seconds, nanoseconds, clock, state32, extraLength) = fixed.withUnsafeBytes { raw in
                (Qcow2Bytes.u64(raw, 0), Qcow2Bytes.u32(raw, 8), Int(Qcow2Bytes.u16(raw, 12)), Int(Qcow2Bytes.u16(raw, 14)),
                 Qcow2Bytes.u32(raw, 16), Qcow2Bytes.u32(raw, 20), Qcow2Bytes.u64(raw, 24), Qcow2Bytes.u32(raw, 32),
                 Int(Qcow2Bytes.u32(raw, 36)))
            }
            guard extraLength <= 1024 else { throw .invalid("qcow2: snapshot \(index) has \(extraLength) bytes of extra data") }
            let rest = try Qcow2Opener.readBytes(file, at: position + 40, count: extraLength + idLength + nameLength)
            var snapshot = Qcow2Snapshot(
                id: String(decoding: rest[extraLength..<extraLength + idLength], as: UTF8.self),
                name: String(decoding: rest[(extraLength + idLength)...], as: UTF8.self),
                l1TableOffset: l1Offset, l1Size: l1Size, dateSeconds: seconds, dateNanoseconds: nanoseconds,
                vmClockNanoseconds: clock, vmStateSize: UInt64(state32))
            rest.withUnsafeBytes { raw in
                if extraLength >= 8 { snapshot.vmStateSize = Qcow2Bytes.u64(raw, 0) }
                if extraLength >= 16 { snapshot.diskSize = Qcow2Bytes.u64(raw, 8) }
                if extraLength >= 24 { snapshot.icount = Qcow2Bytes.u64(raw, 16) }
            }
            guard l1Offset % UInt64(header.clusterSize) == 0 else { throw .invalid("qcow2: snapshot '\(snapshot.name)' has an unaligned L1 table") }
            let l1Bytes = UInt64(l1Size) * 8
            guard l1Bytes <= Qcow2Header.maxL1Bytes, l1Offset <= file.length, l1Bytes <= file.length - l1Offset else {
                throw .invalid("qcow2: the L1 table of snapshot '\(snapshot.name)' (\(l1Size) entries at \(l1Offset)) is out of range")
            }
            snapshots.append(snapshot)
            let length = 40 + extraLength + idLength + nameLength
            position += UInt64((length + 7) / 8 * 8)
        }
        return snapshots
    }

    /// Bytes the snapshot table occupies.
    static func tableLength(file: BlockNode, header: Qcow2Header) throws(BlockError) -> UInt64 {
        var position = header.snapshotsOffset
        for _ in 0..<Int(header.snapshotCount) {
            let fixed = try Qcow2Opener.readBytes(file, at: position, count: 40)
            let length = fixed.withUnsafeBytes { raw in
                40 + Int(Qcow2Bytes.u32(raw, 36)) + Int(Qcow2Bytes.u16(raw, 12)) + Int(Qcow2Bytes.u16(raw, 14))
            }
            position += UInt64((length + 7) / 8 * 8)
        }
        return position - header.snapshotsOffset
    }
}
