import { defineConfig } from "vitest/config";

// The window's UI. `npm run dev` serves it for `npm run tauri dev`; `npm run build` writes
// dist/, which the app embeds (tauri.conf.json's frontendDist).
export default defineConfig({
  clearScreen: false,
  server: { port: 5173, strictPort: true, host: "localhost" },
  build: { target: "safari15", outDir: "dist", emptyOutDir: true },
  test: {
    environment: "happy-dom",
    include: ["test/**/*.test.ts", "test/**/*.test.tsx"],
  },
});
