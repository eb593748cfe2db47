import { defineConfig } from 'vite';

export default defineConfig({
  // Relative asset URLs: the built app works from any path (the server's root, or /app/ in tests).
  base: './',
  build: { target: 'es2022' },
});
