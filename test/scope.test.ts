import assert from "node:assert/strict";
import { test } from "node:test";
import { Scope } from "../src/util/scope.js";

test("a scope releases resources in reverse order, even when the body fails", async () => {
  const released: string[] = [];
  await assert.rejects(
    Scope.with(async (scope) => {
      scope.defer("a", () => void released.push("a"));
      scope.defer("b", async () => void released.push("b"));
      throw new Error("boom");
    }),
    /boom/,
  );
  assert.deepEqual(released, ["b", "a"]);
});
