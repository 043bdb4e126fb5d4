import { defineConfig } from 'vite';
import react from '@vitejs/plugin-react';

// `npm run dev` proxies the API and Socket.IO to the running dev stack's gateway, so the page can
// be edited with hot reload while logins and presence stay real.
const gateway = process.env.GATEWAY_URL || 'https://localhost:8443';

export default defineConfig({
  plugins: [react()],
  server: {
    proxy: {
      '/api': { target: gateway, secure: false, changeOrigin: true },
      // The gateway checks the Origin of Socket.IO handshakes: present the gateway's own.
      '/socket.io': { target: gateway, secure: false, changeOrigin: true, ws: true, headers: { origin: gateway } },
    },
  },
  test: {
    environment: 'node',
    include: ['src/**/*.test.js'],
  },
});
