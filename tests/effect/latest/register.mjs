// node --import ./latest/register.mjs: resolve the test files' own imports of effect,
// @effect/* and msgpackr from latest/node_modules, so one set of tests runs against both
// pinned Effect releases. Imports made inside node_modules are left alone.
import { register } from "node:module";

register("./hooks.mjs", import.meta.url);
