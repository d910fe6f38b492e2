import JSON
import XCTest

import QAPI

final class IntrospectionTests: XCTestCase {
    private func entries() throws -> [String: JSONValue] {
        let schema = try JSONValue.parse(QAPIIntrospection.schema)
        guard case .array(let items) = schema else {
            XCTFail("the schema is not an array")
            return [:]
        }
        var byName: [String: JSONValue] = [:]
        for item in items {
            guard case .string(let name)? = item["name"] else {
                XCTFail("entry without a name: \(item.serialized())")
                continue
            }
            XCTAssertNil(byName[name], "\(name) appears twice")
            byName[name] = item
        }
        return byName
    }

    func testQueryBlock() throws {
        let byName = try entries()
        XCTAssertEqual(byName["query-block"]?["meta-type"], .string("command"))
        XCTAssertEqual(byName["query-block"]?["ret-type"], .string("[BlockInfo]"))
        XCTAssertEqual(byName["[BlockInfo]"]?["meta-type"], .string("array"))
        XCTAssertEqual(byName["[BlockInfo]"]?["element-type"], .string("BlockInfo"))
        guard case .array(let members)? = byName["BlockInfo"]?["members"] else { return XCTFail("no BlockInfo") }
        XCTAssertTrue(members.contains(json(#"{"name": "device", "type": "str"}"#)))
        XCTAssertTrue(members.contains(json(#"{"name": "inserted", "type": "BlockDeviceInfo", "default": null}"#)))
    }

    func testEveryReferencedTypeIsDescribed() throws {
        let byName = try entries()
        for (name, entry) in byName {
            var references: [JSONValue] = []
            for key in ["arg-type", "ret-type", "element-type"] {
                if let value = entry[key] { references.append(value) }
            }
            if case .array(let members)? = entry["members"] {
                references += members.compactMap { $0["type"] }
            }
            if case .array(let variants)? = entry["variants"] {
                references += variants.compactMap { $0["type"] }
            }
            for case .string(let reference) in references {
                XCTAssertNotNil(byName[reference], "\(name) refers to undescribed \(reference)")
            }
        }
    }

    func testCommandsEventsAndUnions() throws {
        let byName = try entries()
        for command in QAPICommands.all {
            XCTAssertEqual(byName[command.name]?["meta-type"], .string("command"), command.name)
        }
        XCTAssertEqual(byName["BLOCK_JOB_READY"]?["meta-type"], .string("event"))
        XCTAssertEqual(byName["blockdev-add"]?["arg-type"], .string("BlockdevOptions"))
        XCTAssertEqual(byName["BlockdevOptions"]?["tag"], .string("driver"))
        XCTAssertEqual(byName["BlockdevRef"]?["meta-type"], .string("alternate"))
        XCTAssertEqual(byName["ImageInfoSpecific"]?["tag"], .string("type"))
        XCTAssertEqual(byName["int"]?["json-type"], .string("int"))
        guard case .array(let values)? = byName["NbdServerRemoveMode"]?["values"] else { return XCTFail("no enum") }
        XCTAssertEqual(values, [.string("safe"), .string("hard")])
        XCTAssertEqual(QAPIIntrospection.entries.count, byName.count)
        for event in QAPIEvents.all {
            XCTAssertEqual(byName[event.name]?["meta-type"], .string("event"), event.name)
        }
    }
}
