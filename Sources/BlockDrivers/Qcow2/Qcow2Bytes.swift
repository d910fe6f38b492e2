/// Big-endian loads and stores on raw bytes, the byte order of every qcow2 (and qcow) structure.
enum Qcow2Bytes: BigEndianOrder {}
