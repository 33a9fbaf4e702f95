import type express from 'express';
// @ts-expect-error Express 4 installed under an alias, without types of its own: typed as Express below.
import express4 from 'express4';
import { expressAdapter } from './express5.js';

export default expressAdapter('express4', express4 as typeof express);
