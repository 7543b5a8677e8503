import { render } from "preact";
import { App } from "./app";
import { TauriBridge } from "./bridge";
import { Model } from "./model";
import "./styles.css";

const root = document.getElementById("app");
if (root) render(<App model={new Model(new TauriBridge())} />, root);
