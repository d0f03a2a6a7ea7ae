// Module resolution hook for register.mjs.
const latest = new URL("./", import.meta.url).href;
const redirected = /^(effect|@effect\/[^/]+|msgpackr)(\/.*)?$/;

export async function resolve(specifier, context, nextResolve) {
  const parent = context.parentURL ?? "";
  if (redirected.test(specifier) && parent.startsWith("file:") && !parent.includes("/node_modules/")) {
    return nextResolve(specifier, { ...context, parentURL: new URL("package.json", latest).href });
  }
  return nextResolve(specifier, context);
}
