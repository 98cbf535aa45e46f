// The console's build: one script and one stylesheet under fixed names, so the output is the
// same on every machine and the gateway can embed it by name (see docs/decisions/0022).
import { defineConfig } from "vite";

export default defineConfig({
  // Relative URLs: the same files work at /console/ on a gateway and behind nginx.
  base: "./",
  oxc: {
    jsx: { runtime: "automatic", importSource: "preact" },
  },
  build: {
    outDir: "dist",
    emptyOutDir: true,
    assetsDir: "assets",
    target: "es2022",
    // The preload polyfill would be inline script, which the Content-Security-Policy refuses.
    modulePreload: { polyfill: false },
    cssCodeSplit: false,
    sourcemap: false,
    reportCompressedSize: false,
    rolldownOptions: {
      output: {
        entryFileNames: "assets/console.js",
        chunkFileNames: "assets/[name].js",
        assetFileNames: "assets/console[extname]",
      },
    },
  },
});
