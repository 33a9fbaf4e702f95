/**
 * The application's session data, declared the way the README tells users to: one
 * declaration merge into sessionflow's `SessionData`, seen by every integration.
 */
declare module 'sessionflow' {
  interface SessionData {
    user_id: number;
    cart: string[];
    theme?: 'light' | 'dark';
  }
}

export {};
